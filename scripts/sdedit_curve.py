"""SDEdit's trade-off on Fashion-MNIST: faithfulness (RMS distance of the edit to its guide) against
realism (FD of the edits against the test images) and class accuracy, over strength 0.1 to 0.9.
The guides are test images reduced to 7x7 blocks (a coarse "painting" of each garment); each edit is
conditioned on the guide's true class, guidance 1, DPM-Solver++(2M) with 10 steps below t0.

    python scripts/sdedit_curve.py runs/fashion-unet 500 docs/figures/fashion_sdedit
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from unnoise.data import DataConfig, load_dataset  # noqa: E402
from unnoise.edit import sdedit  # noqa: E402
from unnoise.eval.reference import reference  # noqa: E402
from unnoise.eval.samples import sample_metrics  # noqa: E402
from unnoise.features import feature_net_for  # noqa: E402
from unnoise.pipeline import Pipeline  # noqa: E402
from unnoise.plots import save_image_grid  # noqa: E402

STRENGTHS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def main(run: str, n: int, out: Path) -> None:
    torch.set_num_threads(1)
    pipe = Pipeline.load(run, "cpu")
    test = load_dataset(DataConfig(name="fashion-mnist", split="test"))
    images, labels = test.images[:n].float() / 127.5 - 1, test.labels[:n]
    guides = F.interpolate(F.avg_pool2d(images, 4), scale_factor=4, mode="nearest")
    feats = feature_net_for(pipe.config.data)
    ref = reference(pipe.config, feats, Path(pipe.source))
    rows, strip = [], [guides[:8]]
    for strength in STRENGTHS:
        x = sdedit(pipe, guides, strength, labels=labels, guidance=1.0, sampler="dpmpp_2m", steps=10, seed=0)
        m = sample_metrics(x, labels, ref, feats, ("fd", "acc")).named()
        rows.append({"strength": strength, "rms_to_guide": (x - guides).square().mean().sqrt().item(),
                     "rms_to_original": (x - images).square().mean().sqrt().item(), **m})
        print(json.dumps(rows[-1]), flush=True)
        strip.append(x[:8])
    guide_fd = sample_metrics(guides, labels, ref, feats, ("fd", "acc")).named()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"run": run, "step": pipe.step, "n": n, "rows": rows,
                                                    "guides": guide_fd}, indent=1) + "\n")
    save_image_grid(torch.stack(strip, 1).flatten(0, 1), out.with_name(out.name + "_strip.png"),
                    columns=len(strip))
    fd = next(k for k in rows[0] if k.startswith("FD"))
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([r["rms_to_guide"] for r in rows], [r[fd] for r in rows], "o-")
    for r in rows:
        ax.annotate(f"{r['strength']:.1f}", (r["rms_to_guide"], r[fd]), fontsize=8)
    ax.set(yscale="log", xlabel="RMS distance to the guide (faithfulness)", ylabel=f"{fd} (realism)",
           title="SDEdit on Fashion-MNIST: strength 0.1 to 0.9")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
