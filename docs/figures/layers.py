"""Draws docs/figures/layers.svg: the layers of the package, each a folder, each importing only
the layers above it. Run `python docs/figures/layers.py [out.svg]` after changing the layers
(tests/test_docs_site.py runs it and checks that the picture names every layer folder)."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "chainrule"

# (folder, layer, what it holds, the interface the layers below use)
LAYERS = [
    (
        "_schema",
        "1 schemas",
        "Array, Differentiable, leaves by path, the exception tree",
        "Schema · ArraySpec · tree.leaves · ChainruleError",
    ),
    (
        "_component",
        "2 components",
        "endpoint rows, rules, Point, Component, backends",
        "Component.call · at/apply_at/run · Lane · ENDPOINTS",
    ),
    (
        "_transport",
        "3 transports",
        "wire codec, Handler, remote, HTTP, launch",
        "Transport · Handler · remote_component",
    ),
    (
        "_bindings",
        "4 bindings",
        "JAX primitives and rules, the torch Function",
        "chainrule.jax.call · chainrule.torch.call",
    ),
    (
        "_tools",
        "5 tools",
        "check_gradients, optimize, soft, plot, graph",
        "check_gradients · optimize · soft · plot",
    ),
    ("_scale", "6 scale", "Ray actors, parallel batches (to come)", ""),
    ("_cli", "7 CLI", "chainrule serve · call · schema · check · new · env", ""),
]


def subfolders(folder: str) -> str:
    """The folder's subpackages, as a reader of the tree sees them."""
    found = sorted(p.name for p in (PACKAGE / folder).iterdir() if (p / "__init__.py").is_file())
    return "  ".join(f"{name}/" for name in found)


def draw(out: Path) -> None:
    plt.rcParams["svg.hashsalt"] = "chainrule-layers"  # the same file for the same picture
    plt.rcParams["svg.fonttype"] = "none"  # text stays text: small, searchable
    fig = plt.figure(figsize=(9.0, 7.2))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 9.0)
    ax.set_ylim(0, 7.2)
    ax.axis("off")
    height, gap, top = 0.78, 0.18, 7.0
    for i, (folder, layer, holds, interface) in enumerate(LAYERS):
        y = top - (i + 1) * height - i * gap
        box = FancyBboxPatch(
            (0.2, y),
            6.3,
            height,
            boxstyle="round,pad=0.02,rounding_size=0.08",
            facecolor="#eef3fb" if i % 2 else "#f7f7f2",
            edgecolor="#555555",
        )
        ax.add_patch(box)
        ax.text(0.35, y + height - 0.22, f"{layer}   {folder}/", fontsize=11, weight="bold")
        sub = subfolders(folder)
        ax.text(0.35, y + height - 0.46, holds + (f"   ({sub})" if sub else ""), fontsize=8)
        if interface:
            ax.text(0.35, y + 0.1, "used below: " + interface, fontsize=8, color="#1f4e8c")
        if i:
            arrow = FancyArrowPatch(
                (3.35, y + height),
                (3.35, y + height + gap),
                arrowstyle="-|>",
                mutation_scale=10,
                color="#888888",
            )
            ax.add_patch(arrow)
    side = FancyBboxPatch(
        (6.8, 2.9),
        2.0,
        3.4,
        boxstyle="round,pad=0.02,rounding_size=0.08",
        facecolor="#fff4e0",
        edgecolor="#555555",
    )
    ax.add_patch(side)
    ax.text(6.95, 5.95, "public namespace", fontsize=10, weight="bold")
    for k, name in enumerate(
        ["chainrule", "chainrule.jax", "chainrule.torch", "chainrule.soft", "chainrule.plot"]
    ):
        ax.text(6.95, 5.5 - 0.35 * k, name, fontsize=8, family="monospace")
    ax.text(
        6.95,
        3.95,
        "re-exports the layers:\nimports all of them,\nnone imports it",
        fontsize=8,
        va="top",
    )
    ax.text(
        0.2,
        7.05,
        "Each layer is a folder and imports only the layers above it (arrows: imports).",
        fontsize=9,
        style="italic",
    )
    fig.savefig(out, metadata={"Date": None})
    plt.close(fig)


if __name__ == "__main__":
    draw(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("layers.svg"))
