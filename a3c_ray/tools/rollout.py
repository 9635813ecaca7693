"""A worker's acting loop alone: ``a3c-bench rollout --json out.json``.

Inference, sampling and emulator steps (no gradient, no Ray), in one process per core,
all at once, two ways: serial (all envs step, then one inference call on all of them,
as the rollout worker does) and double-buffered (two halves; one half's emulators step
in ale-py's C++ thread, ``send``/``recv``, while the other half's inference runs).
Rounds alternate the two; env steps/s are summed over the processes. (The network and
the parameter server alone: ``a3c-bench`` measures the first as its network bound,
``a3c-bench scale`` the second.)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import statistics
import sys
import time

import numpy as np

from ..core.config import resolve_game


def _rollout_child(cfg_dict: dict, mode: str, seconds: float, seed: int, out) -> None:
    from ..core.config import load_config
    from ..core.models import configure_tf_threads

    configure_tf_threads(1)
    from ..core.envs import make_atari
    from ..core.models import ActorCritic
    from ..core.tflib import tf
    from ..core.worker import sample_actions

    cfg = load_config(base=cfg_dict, source="bench rollout")
    n = cfg.training.envs_per_worker
    halves = [n] if mode == "serial" else [n // 2, n - n // 2]
    envs = [make_atari(cfg, resolve_game(cfg.env.id)[1], k)[0] for k in halves]
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    n_actions = int(envs[0].single_action_space.n)
    net = ActorCritic(obs[0].shape[1:], n_actions, cfg.model)
    act = tf.function(net.logits, input_signature=[net.obs_spec(obs[0].dtype)],
                      autograph=False).get_concrete_function()
    rng = np.random.default_rng(seed)

    def policy(o):
        return sample_actions(act(tf.constant(o)).numpy().astype(np.float64), rng)

    steps, t0, warm = 0, None, time.perf_counter() + 3.0
    if mode != "serial":
        for env, o in zip(envs, obs):
            env.send(policy(o))
    while True:
        now = time.perf_counter()
        if t0 is None and now >= warm:
            t0, steps = now, 0
        if t0 is not None and now >= t0 + seconds:
            break
        if mode == "serial":
            obs[0] = envs[0].step(policy(obs[0]))[0]
        else:  # while this half's inference runs, the other half's emulators step
            for env in envs:
                env.send(policy(env.recv()[0]))
        steps += n
    out.put(steps / (time.perf_counter() - t0))


def measure_rollout(cfg, seconds: float, rounds: int, procs: int) -> dict:
    ctx = mp.get_context("spawn")
    res: dict = {"serial": [], "double_buffered": []}
    for r in range(rounds):
        for mode in ("serial", "double_buffered"):
            q = ctx.Queue()
            children = [ctx.Process(target=_rollout_child,
                                    args=(cfg.to_dict(), mode, seconds, 1000 * i + r, q))
                        for i in range(procs)]
            for p in children:
                p.start()
            rates = _collect(q, children)
            res[mode].append(sum(rates))
            print(f"round {r + 1} {mode}: {sum(rates):,.0f} env steps/s "
                  f"({procs} processes)", flush=True)
    res["ratio_double_over_serial"] = (statistics.median(res["double_buffered"])
                                       / statistics.median(res["serial"]))
    print(f"double-buffered / serial (medians): {res['ratio_double_over_serial']:.2f}",
          flush=True)
    return res


def _collect(q, children) -> list[float]:
    """Each child's env steps/s; a child that dies (its traceback is on stderr) stops the
    measurement at once instead of leaving the others' results waiting."""
    rates: list[float] = []
    while len(rates) < len(children):
        try:
            rates.append(q.get(timeout=1.0))
        except queue.Empty:
            failed = [p.exitcode for p in children if p.exitcode not in (None, 0)]
            if failed:
                for p in children:
                    p.kill()
                raise RuntimeError(f"a rollout process exited with status {failed[0]}")
    for p in children:
        p.join()
    return rates


def main(argv, load) -> int:
    ap = argparse.ArgumentParser(prog="a3c-bench rollout", description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="pong")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured window per run")
    ap.add_argument("--rounds", type=int, default=2, help="alternated rounds")
    ap.add_argument("--processes", type=int, default=0,
                    help="processes at once (default: one per core)")
    ap.add_argument("--config", metavar="FILE")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    cfg = load(args)
    if cfg is None:
        return 2
    if resolve_game(cfg.env.id)[0] != "atari":
        print(f"a3c-bench rollout: --env {cfg.env.id} is not an Atari game; the acting loop "
              "it times is ale-py's vector env (try --env pong)", file=sys.stderr)
        return 2
    res = measure_rollout(cfg, args.seconds, args.rounds, args.processes or os.cpu_count() or 1)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": args.env, **res}, f, indent=1)
    return 0


if __name__ == "__main__":
    from .bench import main as bench_main

    sys.exit(bench_main(["rollout", *sys.argv[1:]]))
