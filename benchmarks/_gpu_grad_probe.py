"""Probe: which adjoint kernel first produces NaN on a GPU backend (developer tool)."""
import sys

import numpy as np

sys.path.insert(0, "tests")
import physim as ps  # noqa: E402

ps.init(arch=sys.argv[1] if len(sys.argv) > 1 else "cuda", precision="f64", fast_compile=True)
from conftest import small_scene  # noqa: E402

import physim.tape as T  # noqa: E402

scene = small_scene(2, ps.Elastic(E=2e3, nu=0.3))
eng = scene.engine
fields = {n: getattr(eng, n) for n in ("x", "v", "C", "F", "F_trial", "U", "V", "sig", "sig_elastic", "affine",
                                        "grid_mv", "grid_m", "grid_v", "action")}
orig = T.Launch.run_backward
seen = {"done": False}


def checked(self):
    orig(self)
    if seen["done"]:
        return
    for name, f in fields.items():
        g = f.grad.to_numpy()
        if not np.isfinite(g).all():
            print("first non-finite adjoint:", name, "after grad of", self.kernel.__name__, self.args, flush=True)
            seen["done"] = True
            return


T.Launch.run_backward = checked
actions = np.tile([1.5, 0.0, 0.0], (4, 1))
scene.forward(actions)
try:
    g = scene.backward(grad_x=np.ones((scene.n_particles, 2)))
    print("grad actions", g.actions[0])
except Exception as e:  # noqa: BLE001
    print("error", e)
