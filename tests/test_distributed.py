"""DH-KFAC under tf.distribute.MirroredStrategy on two logical CPU devices: gradients and curvature
statistics are combined across replicas, so the weights after a few steps match a single-device run on
the same global batches.  Runs in a subprocess: logical devices must be configured before TensorFlow
initialises them, which the rest of the suite has done already."""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import json
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from deephedge_tf.optimizers import DHKFAC, with_curvature

    rng = np.random.default_rng(0)
    x = rng.normal(size=(192, 4)).astype("float32")
    y = (np.sin(2 * x[:, :1]) + x[:, 1:2] * x[:, 2:3]).astype("float32")

    def run(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="tanh"),
                                    keras.layers.Dense(1)])
            model = with_curvature(net)
            # Forward mode in both runs: the finite-difference line model (the default) runs on one replica
            # only, and under a multi-replica strategy the step uses forward mode (a logged warning).
            model.compile(optimizer=DHKFAC(preconditioner="kronecker", inverse_period=2, momentum=0.5,
                                           jvp_method="forward_mode"), loss="mse")
        history = model.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0)
        return [v.numpy() for v in model.trainable_variables], history.history["loss"], \\
            int(model.optimizer.iterations.numpy()), list(model.optimizer.active_blocks)

    single = run(tf.distribute.OneDeviceStrategy("/cpu:0"))
    mirrored = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    moved = max(float(np.abs(w - w0).max()) for w, w0 in zip(single[0], mirrored[0]))
    change = max(float(np.abs(w).max()) for w in single[0])
    print(json.dumps({"max_diff": moved, "scale": change, "losses": [single[1], mirrored[1]],
                      "iterations": [single[2], mirrored[2]], "blocks": [single[3], mirrored[3]],
                      "weights": [[w.tolist() for w in single[0]], [w.tolist() for w in mirrored[0]]]}))
''')


def test_mirrored_two_replicas_match_one_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["iterations"] == [6, 6]
    assert [len(b) for b in out["blocks"]] == [2, 2]  # both Dense layers have curvature
    # Six steps of the same global batches: float32 summation order is the only difference.
    import numpy as np

    for a, b in zip(*out["weights"]):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(out["losses"][1], out["losses"][0], rtol=1e-4)
    assert out["losses"][0][1] < 0.8 * out["losses"][0][0]  # it trained: the match is not of two idle runs
