"""The spike models through the public API, on a recording not used in development (issue 16).

    python bench/spikes_api.py [--n-images 30] [--kinds glm_correlated,rglm_correlated,...]

NaturalImages1 of the salamander retina data (60 flashed images of 300 ms, 38 neurons, 30 trials):
the first ``--n-images`` images in their order make one trial (30 bins of 10 ms each), so the 30 trials
repeat one stimulus sequence. The counts go to ``POST /v1/spikes/models`` as an ``.npz`` upload with
each kind's defaults (the service's settings; 6 held-out trials), then ``POST .../sample`` draws 6
trials. Prints, per kind: held-out bits/spike, how the fit ended, the request's wall time, and the
samples' counts per bin and largest count next to the data's.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np

KINDS = "glm_correlated,rglm_correlated,glm_correlated_locked,rglm_correlated_locked"


def natural_images_counts(n_images: int) -> np.ndarray:
    """(30 trials, n_images * 30 bins, 38 neurons): the images' 300 ms windows in their order."""
    import scipy.io as sio

    from v1motion.models.datasets import require_shared_data
    from v1motion.models.spikes.data import RETINA_DIR, bin_spike_times

    m = sio.loadmat(require_shared_data(RETINA_DIR, "NaturalImages1.mat"))
    spikes = m["Spikes"]
    n_neurons, n_trials = spikes[0, 0].shape
    blocks = []
    for s in range(n_images):
        times = [
            [np.ravel(spikes[s, 0][i, k]).astype(float) for i in range(n_neurons)]
            for k in range(n_trials)
        ]
        blocks.append(bin_spike_times(times, 10.0, duration=300.0))
    return np.concatenate(blocks, axis=1)


def main() -> None:
    from fastapi.testclient import TestClient

    from v1motion.service.app import create_app
    from v1motion.service.settings import Settings

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n-images", type=int, default=30)
    p.add_argument("--kinds", default=KINDS)
    args = p.parse_args()
    y = natural_images_counts(args.n_images)
    buf = io.BytesIO()
    np.savez_compressed(buf, counts=y)
    print(f"NaturalImages1, {args.n_images} images: counts {y.shape}, {y.mean():.4f} per bin")
    print(
        f"{'kind':24s} {'bits/spike':>10s} {'converged':>9s} {'stop':>8s} {'iter':>6s} "
        f"{'seconds':>7s} {'sample/bin':>10s} {'max':>4s}"
    )
    with TestClient(create_app(Settings()), base_url="http://127.0.0.1") as client:
        for kind in args.kinds.split(","):
            t0 = time.perf_counter()
            r = client.post(
                "/v1/spikes/models",
                files={"file": ("counts.npz", buf.getvalue(), "application/octet-stream")},
                data={"kind": kind},
            )
            seconds = time.perf_counter() - t0
            if r.status_code != 201:
                print(f"{kind:24s} refused: {r.status_code} {r.text}")
                continue
            info = r.json()
            body = {"n_trials": 6, "seed": 1}
            if info["stimulus_bins"] is None:
                body["n_bins"] = y.shape[1]
            s = client.post(f"/v1/spikes/models/{info['id']}/sample", json=body)
            x = np.asarray(s.json()["counts"])
            fit = info["fit"]
            print(
                f"{kind:24s} {info['held_out_bits_per_spike']:+10.3f} {fit['converged']!s:>9s} "
                f"{fit['stop_reason']:>8s} {fit['n_iter']:6d} {seconds:7.1f} {x.mean():10.4f} "
                f"{x.max():4.0f}",
                flush=True,
            )
    print(f"data: {y.mean():.4f} counts per bin, largest {y.max():.0f}")


if __name__ == "__main__":
    main()
