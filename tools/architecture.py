"""Draw kvmlab's layers as the code has them: docs/images/architecture.png.

The layers are the import contract's (pyproject ``[tool.importlinter]``); the arrows are the
imports grimp finds between them, thicker for more.  Run ``make architecture`` after moving
code between layers; the README shows the picture.
"""

from __future__ import annotations

import sys
import tomllib
from collections import Counter
from pathlib import Path

import grimp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def layers() -> list[list[str]]:
    """The contract's layers, top first, each a list of module names."""
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract = next(c for c in conf["contracts"] if c["type"] == "layers"
                    and not c.get("containers"))
    return [[m.strip() for m in layer.replace("|", ":").split(":")] for layer in contract["layers"]]


def layer_imports(stack: list[list[str]]) -> Counter[tuple[int, int]]:
    """(importing layer, imported layer) -> how many module imports, from grimp."""
    graph = grimp.build_graph("kvmlab", exclude_type_checking_imports=True)
    where: dict[str, int] = {}
    for i, mods in enumerate(stack):
        for m in mods:
            for name in graph.modules:
                if name == m or name.startswith(m + "."):
                    where[name] = i
    edges: Counter[tuple[int, int]] = Counter()
    for name, i in where.items():
        for dep in graph.find_modules_directly_imported_by(name):
            j = where.get(dep)
            if j is not None and j != i:
                edges[(i, j)] += 1
    return edges


#: each layer's one job, top first (the contract lists the modules)
ROLES = ["entry point", "command line", "the seed, reproduced", "interactive lab",
         "documents: report, lab note", "notebooks as processes: runs, sweeps, live watch",
         "figures", "experiments, run options", "fault injectors",
         "analysis: series, causes, summary, scoring", "VMs: launch, probe",
         "live jobs: steer, record, predict", "backends: QMP, libvirt",
         "store: run folders, owned temp dirs, sweep folders",
         "QEMU builds: install, capabilities, trace points, images", "the guest", "leaves"]


def draw(out: Path) -> None:
    stack = layers()
    edges = layer_imports(stack)
    n = len(stack)
    roles = ROLES if len(ROLES) == n else [""] * n
    fig, ax = plt.subplots(figsize=(10, 0.5 * n + 0.7))
    ax.set_xlim(0, 10)
    ax.set_ylim(-0.6, n - 0.3)
    ax.axis("off")
    for i, mods in enumerate(stack):
        y = n - 1 - i
        below = sorted({j for (a, j) in edges if a == i})
        uses = sum(c for (a, _), c in edges.items() if a == i)
        ax.text(0.05, y, roles[i], ha="left", va="center", fontsize=8, color="0.25")
        ax.text(5.6, y, "  ".join(m.removeprefix("kvmlab.") for m in mods), ha="center",
                va="center", fontsize=8,
                bbox={"boxstyle": "round,pad=0.3", "fc": "#eef3fb", "ec": "#4a6fa5"})
        if below:
            ax.text(9.95, y, f"{uses} imports of {len(below)} layers below", ha="right",
                    va="center", fontsize=7, color="0.4")
        if i < n - 1:
            ax.annotate("", xy=(5.6, y - 0.72), xytext=(5.6, y - 0.28),
                        arrowprops={"arrowstyle": "->", "color": "0.5", "lw": 0.8})
    ax.set_title("kvmlab's layers, from the import contract and grimp's import graph: "
                 "each imports only from below", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"{out}: {n} layers, {sum(edges.values())} imports between them")


if __name__ == "__main__":
    draw(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "images" / "architecture.png")
