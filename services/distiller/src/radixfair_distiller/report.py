"""The evaluation table printed by the CLI and written by the benchmark (markdown)."""

from __future__ import annotations

from collections.abc import Mapping

COLUMNS = (
    ("parameters", "params (M)", lambda v: f"{v / 1e6:.2f}"),
    ("size_bytes", "size (MB)", lambda v: f"{v / 1e6:.1f}"),
    ("perplexity", "perplexity", lambda v: f"{v:.2f}"),
    ("kl_to_teacher", "KL to teacher", lambda v: f"{v:.4f}"),
    ("top1_agreement", "top-1 agreement", lambda v: f"{v:.3f}"),
    ("exact_match", "exact match", lambda v: f"{v:.3f}"),
    ("decode_tokens_per_second", "decode tok/s (CPU worker)", lambda v: f"{v:.1f}"),
)


def evaluation_table(rows: list[tuple[str, Mapping[str, float]]]) -> str:
    """One markdown row per (model name, metrics); missing figures show as "-"."""
    header = "| model | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(COLUMNS)
    lines = [header, rule]
    for name, metrics in rows:
        cells = [fmt(metrics[key]) if key in metrics else "-" for key, _, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
