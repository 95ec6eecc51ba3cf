"""Central finite differences against physim's reverse mode."""

import numpy as np

REL_TOL = 1e-3
#: entries where both |fd| and |analytic| are below ABS_FLOOR * max|gradient| are not compared
#: (their relative error is dominated by finite-difference round-off); an entry that is large
#: in either is compared, so a wrong large analytic entry where the true gradient is ~0 fails
ABS_FLOOR = 1e-4


def loss_and_grad(scene, actions, weights):
    """loss = sum(weights_x * x_T) + sum(weights_v * v_T); returns (loss, Gradients)."""
    wx, wv = weights
    scene.reset()
    scene.forward(actions)
    s = scene.get_state()
    loss = float((wx * s["mpm.x"]).sum() + (wv * s["mpm.v"]).sum())
    return loss, scene.backward(grad_x=wx, grad_v=wv)


def loss_only(scene, actions, weights, x0=None, v0=None):
    wx, wv = weights
    over = {k: v for k, v in (("mpm.x", x0), ("mpm.v", v0)) if v is not None}
    scene.reset(over)
    scene.forward(actions, requires_grad=False)
    s = scene.get_state()
    return float((wx * s["mpm.x"]).sum() + (wv * s["mpm.v"]).sum())


def loss_with_state(scene, actions, weights, state=None):
    """:func:`loss_only` from the initial state with any entries replaced (``state``: name ->
    array, e.g. ``{"mpm.F": ..., "tools.rot": ...}``)."""
    wx, wv = weights
    scene.reset(state)
    scene.forward(actions, requires_grad=False)
    s = scene.get_state()
    return float((wx * s["mpm.x"]).sum() + (wv * s["mpm.v"]).sum())


def central_difference(f, h):
    return (f(+h) - f(-h)) / (2 * h)


def action_entries_fd(scene, actions, weights, entries, h):
    """Central differences of :func:`loss_only` with respect to the action entries ``entries``
    (a list of (step, column)), in that order."""
    return actions_fd(lambda a: loss_only(scene, a, weights), actions, entries, h)


def actions_fd(loss, actions, entries, h):
    """Central differences of ``loss(actions)`` with respect to the action entries ``entries``
    (a list of (step, column)), in that order."""
    fd = []
    for t, j in entries:
        def shifted(e, t=t, j=j):
            a = actions.copy()
            a[t, j] += e
            return loss(a)
        fd.append(central_difference(shifted, h))
    return fd


def initial_entries_fd(scene, actions, weights, label, base, rows, h, step=1.0):
    """Central differences of :func:`loss_only` with respect to entries of the initial state
    ``label`` (``"x0"`` or ``"v0"``, starting from ``base``): rows ``rows``, every axis, in
    that order. Each entry moves by ``step * h`` and the difference is divided by ``step``
    (a smaller position step with the same ``h``)."""
    fd = []
    for i in rows:
        for d in range(base.shape[1]):
            def shifted(e, i=i, d=d):
                arr = base.copy()
                arr[i, d] += step * e
                return loss_only(scene, actions, weights, **{label: arr})
            fd.append(central_difference(shifted, h) / step)
    return fd


def assert_close(fd, ad, what, scale=None):
    fd, ad = np.atleast_1d(np.asarray(fd, float)), np.atleast_1d(np.asarray(ad, float))
    scale = max(np.abs(fd).max(), np.abs(ad).max()) if scale is None else scale
    assert scale > 0, f"{what}: gradient is identically zero; the check would be vacuous"
    big = np.maximum(np.abs(fd), np.abs(ad))
    mask = big > ABS_FLOOR * scale
    rel = np.abs(fd - ad)[mask] / big[mask]
    assert mask.any(), f"{what}: no entry above the absolute floor"
    assert rel.max() < REL_TOL, f"{what}: max relative error {rel.max():.2e}\nfd={fd}\nad={ad}"


def chunked_and_full(scene, actions, seeds, ks=(4, 16)):
    """Gradients of the same rollout and seeds with checkpoint chunks of each K in ``ks``
    (e.g. chunks not aligned with steps, and one chunk for the whole rollout)."""
    results = []
    for k in ks:
        scene.set_checkpoint_every(k)
        scene.reset()
        scene.forward(actions)
        results.append(scene.backward(seeds))
    return results
