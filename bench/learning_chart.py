"""The learning bench's chart (bench/learning.py --png): one bar panel per metric, matplotlib
when installed, else a small dependency-free PNG writer."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

COLOURS = {"base": (150, 150, 150), "rewardloop": (74, 123, 208), "trl KTOTrainer": (230, 140, 40)}


def chart_panels(offline: dict, comparison: list[dict]) -> list[dict]:
    """Three bar panels: offline mean reward (incl. base), reward lift per 1,000 feedback events, and
    learner training seconds per sample; `scale` is the value drawn at full height."""
    def bar(name, trainer, mean, ci):
        return {"name": name, "colour": COLOURS[trainer], "mean": mean, "ci": ci}
    label = {c["version"]: c["version"] if c["version"] == "kto" else f"v{c['version']}" for c in comparison}
    reward = [bar("base", "base", offline["base"]["mean"], offline["base"]["ci"])] + [
        bar(label[c["version"]], c["trainer"], c["offline"]["mean"], c["offline"]["ci"]) for c in comparison]
    per_1k = [bar(label[c["version"]], c["trainer"], c["per_1k_events"], c["per_1k_ci"]) for c in comparison]
    secs = [bar(label[c["version"]], c["trainer"], c["train_s_per_sample"], [None, None]) for c in comparison]
    def scale(bars):
        return max([abs(x) for b in bars for x in [b["mean"], *b["ci"]] if x is not None] + [1e-9])
    return [{"title": "mean reward (offline, hidden taste)", "bars": reward, "scale": 1.0},
            {"title": "reward lift per 1,000 feedback events", "bars": per_1k, "scale": scale(per_1k)},
            {"title": "learner training seconds per sample", "bars": secs, "scale": scale(secs)}]


def png_chart(path: Path, panels: list[dict]) -> None:
    """One bar panel per metric, CI whiskers where there is one; grey base, blue rewardloop, orange KTO."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _tiny_png(path, panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(6, 2.6 * len(panels)))
    for ax, panel in zip(axes, panels):
        bars = panel["bars"]
        means = [b["mean"] or 0 for b in bars]
        errs = [[m - (b["ci"][0] if b["ci"][0] is not None else m) for m, b in zip(means, bars)],
                [(b["ci"][1] if b["ci"][1] is not None else m) - m for m, b in zip(means, bars)]]
        ax.bar([b["name"] for b in bars], means, yerr=errs, capsize=4,
               color=["#%02x%02x%02x" % tuple(b["colour"]) for b in bars])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(panel["title"], fontsize=9)
    axes[0].set_ylim(-1, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _tiny_png(path: Path, panels: list[dict], w: int = 480, ph: int = 160) -> None:
    """Dependency-free PNG: the panels stacked top to bottom, bars left to right in each (value /
    panel scale, zero line in the middle), black zero lines, red CI whiskers, grey panel rules."""
    h = ph * len(panels)
    px = [[(255, 255, 255)] * w for _ in range(h)]
    for k, panel in enumerate(panels):
        top, sc = k * ph, panel["scale"]
        y_of = lambda v: top + 4 + int(round((1 - (max(-1.0, min(1.0, v / sc)) + 1) / 2) * (ph - 9)))
        slot = w // max(1, len(panel["bars"]))
        for i, b in enumerate(panel["bars"]):
            if b["mean"] is None:
                continue
            x0, x1 = i * slot + slot // 4, i * slot + 3 * slot // 4
            ya, yb = sorted((y_of(0), y_of(b["mean"])))
            for y in range(ya, yb + 1):
                for x in range(x0, x1):
                    px[y][x] = b["colour"]
            if b["ci"][0] is not None:
                lo, hi = sorted((y_of(b["ci"][0]), y_of(b["ci"][1])))
                for y in range(lo, hi + 1):
                    px[y][(x0 + x1) // 2] = (200, 30, 30)
        for x in range(w):
            px[y_of(0)][x] = (0, 0, 0)
            px[top][x] = (200, 200, 200)
    raw = b"".join(b"\x00" + bytes(c for p in row for c in p) for row in px)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
