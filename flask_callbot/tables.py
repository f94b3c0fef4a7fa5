"""Plain-text tables, as the CLI and the simulator's report print them (stdlib only)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def render_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The header line, then one line per row: each column padded to its widest cell, columns
    two spaces apart, trailing spaces stripped (so an empty last column leaves no padding)."""
    table = [list(headers), *map(list, rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
