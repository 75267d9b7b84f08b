"""One format for every benchmark's results section in BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import time


def machine() -> str:
    """``x86_64, 2 CPU cores, TensorFlow 2.21.0, Python 3.11.7``."""
    import tensorflow as tf

    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, TensorFlow {tf.__version__}, "
            f"Python {platform.python_version()}")


def section(title: str, command: str, details: str, header: list[str], align: list[str], rows: list[list]) -> str:
    """A dated Markdown section: title, the command that produced it, machine and details, a table."""
    lines = [f"### {title} ({time.strftime('%Y-%m-%d')})", "", f"Command: `{command}`  ",
             f"Machine: {machine()}; {details}", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def publish(text: str, path: str | None) -> None:
    """Prints the section and appends it to ``path`` (if given)."""
    print(text)
    if path:
        with open(path, "a") as fh:
            fh.write("\n" + text)
