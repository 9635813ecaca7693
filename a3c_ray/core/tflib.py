"""TensorFlow and Keras for every module of a3c_ray, imported once without their C++
start-up lines on the console (see ``quiet``)."""
from .quiet import quiet_start

with quiet_start():
    import keras  # noqa: F401  (re-exported)
    import tensorflow as tf  # noqa: F401
