"""Probes of one component at a time: ``a3c-bench probe rollout|network|ps``.

* ``rollout``: a worker's acting loop alone (inference, sampling, emulator steps; no
  gradient, no Ray) in one process per core, all at once, two ways: serial (all envs
  step, then one inference call on all of them) and double-buffered (two halves; one
  half's emulators step in ale-py's C++ thread, ``send``/``recv``, while the other
  half's inference runs). Rounds alternate the two; env steps/s summed over processes.
* ``network``: the config's net in its precision: inference per call, gradient per
  segment, loading one weights version. Medians, one core.
* ``ps``: ``ParameterServer.apply`` of one gradient and the weights it then publishes.

Each prints its figures and, with ``--json``, writes them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

import numpy as np


def _median_ms(fn, calls: int) -> float:
    fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _rollout_child(cfg_dict: dict, mode: str, seconds: float, seed: int, out) -> None:
    from ..core.config import load_config, resolve_game
    from ..core.models import configure_tf_threads

    configure_tf_threads(1)
    from ..core.envs import make_atari
    from ..core.models import ActorCritic
    from ..core.tflib import tf
    from ..core.worker import sample_actions

    cfg = load_config(base=cfg_dict, source="probe")
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


def probe_rollout(cfg, seconds: float, rounds: int, procs: int) -> dict:
    ctx = mp.get_context("spawn")
    res: dict = {"serial": [], "double_buffered": []}
    for r in range(rounds):
        for mode in ("serial", "double_buffered"):
            q = ctx.Queue()
            ps = [ctx.Process(target=_rollout_child, args=(cfg.to_dict(), mode, seconds,
                                                           1000 * i + r, q))
                  for i in range(procs)]
            for p in ps:
                p.start()
            rates = [q.get(timeout=seconds + 300) for _ in ps]
            for p in ps:
                p.join()
            res[mode].append(sum(rates))
            print(f"round {r + 1} {mode}: {sum(rates):,.0f} env steps/s "
                  f"({procs} processes)", flush=True)
    res["ratio_double_over_serial"] = (statistics.median(res["double_buffered"])
                                       / statistics.median(res["serial"]))
    return res


def _gradient_fn(tf, net):
    @tf.function(input_signature=[net.obs_spec(np.uint8)], autograph=False)
    def grad(x):
        with tf.GradientTape() as tape:
            logits, value = net.forward(x)
            loss = tf.reduce_sum(logits) + tf.reduce_sum(value)
        return tape.gradient(loss, net.variables)

    return grad


def probe_network(cfg, calls: int) -> dict:
    from ..core.models import ActorCritic, configure_tf_threads

    configure_tf_threads(1)
    from ..core.tflib import tf

    shape, n, T = (cfg.env.frame_stack, cfg.env.screen_size, cfg.env.screen_size), \
        cfg.training.envs_per_worker, cfg.training.t_max
    obs = np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8)
    seg = np.random.default_rng(1).integers(0, 256, (n * T, *shape), dtype=np.uint8)
    master = ActorCritic(shape, 6, cfg.model)
    flat = np.concatenate([w.reshape(-1) for w in master.get_weights()]).astype(np.float32)
    out = {"precision": master.precision}
    for name, net in (("net", master),):
        net.set_flat_weights(flat)
        act = tf.function(net.logits, input_signature=[net.obs_spec(np.uint8)],
                          autograph=False).get_concrete_function()
        grad = _gradient_fn(tf, net)
        out[name] = {"inference_ms": _median_ms(lambda: act(tf.constant(obs)).numpy(), calls),
                     "gradient_ms": _median_ms(lambda: grad(tf.constant(seg))[0].numpy(),
                                               max(calls // 10, 5)),
                     "load_weights_ms": _median_ms(lambda: net.set_flat_weights(flat),
                                                   max(calls // 5, 5))}
        print(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in out[name].items()),
              flush=True)
    return out


def probe_ps(cfg, calls: int) -> dict:
    from ..core.parameter_server import ParameterServer

    ps = ParameterServer(cfg, (cfg.env.frame_stack, cfg.env.screen_size,
                               cfg.env.screen_size), 6)
    g = 1e-3 * np.random.default_rng(0).standard_normal(ps.num_params).astype(np.float32)
    samples = cfg.training.t_max * cfg.training.envs_per_worker

    def step():
        meta = {"samples": samples, "gradients": 1, "env_steps": samples, "episodes": 0,
                "version": ps.counters["version"], "incarnation": ps.incarnation}
        ps.apply([g], [meta])

    out = {"apply_ms": _median_ms(step, calls),
           "apply_and_publish_ms": _median_ms(lambda: (step(), ps.weights()), calls)}
    print(", ".join(f"{k} {v:.2f}" for k, v in out.items()), flush=True)
    return out


def main(argv, load) -> int:
    ap = argparse.ArgumentParser(prog="a3c-bench probe", description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["rollout", "network", "ps"])
    ap.add_argument("--env", default="pong")
    ap.add_argument("--seconds", type=float, default=20.0, help="rollout: window per run")
    ap.add_argument("--rounds", type=int, default=2, help="rollout: alternated rounds")
    ap.add_argument("--processes", type=int, default=0,
                    help="rollout: processes at once (default: one per core)")
    ap.add_argument("--calls", type=int, default=100, help="network/ps: timed calls")
    ap.add_argument("--config", metavar="FILE")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    cfg = load(args)
    if cfg is None:
        return 2

    if args.what == "rollout":
        res = probe_rollout(cfg, args.seconds, args.rounds,
                            args.processes or os.cpu_count() or 1)
    elif args.what == "network":
        res = probe_network(cfg, args.calls)
    else:
        res = probe_ps(cfg, args.calls)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"probe": args.what, "env": args.env, **res}, f, indent=1)
    return 0


if __name__ == "__main__":
    from .bench import main as bench_main

    sys.exit(bench_main(["probe", *sys.argv[1:]]))
