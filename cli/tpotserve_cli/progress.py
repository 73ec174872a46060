"""A training job followed live on stderr: its stage and TPOT's generations as a progress bar."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

from .client import JSON


# --- job progress ---------------------------------------------------------------
class JobProgress:
    """A tqdm bar on stderr, fed with job views by :meth:`Client.wait`.

    The search stops at its generation count or its time budget, whichever comes
    first, so the bar shows the larger of the two fractions; the text after it
    says which generation, the best CV score so far, and the time against the budget.
    """

    def __init__(self, job_id: str, file: TextIO | None = None) -> None:
        self.job_id = job_id
        self.bar = tqdm(
            total=100,
            file=file or sys.stderr,
            desc="waiting",
            bar_format="{percentage:3.0f}%|{bar:20}| {desc}",
        )
        self._elapsed: tuple[float, float] | None = None  # (elapsed_s reported, when we saw it)

    def elapsed(self, progress: JSON, running: bool) -> float | None:
        """The job's elapsed seconds, moved on by our clock between the worker's reports."""
        reported = progress.get("elapsed_s")
        if not isinstance(reported, (int, float)):
            return None
        if self._elapsed is None or self._elapsed[0] != reported:
            self._elapsed = (float(reported), time.monotonic())
        return reported + (time.monotonic() - self._elapsed[1] if running else 0.0)

    def __call__(self, view: JSON) -> None:
        status = view.get("status") or "?"
        progress = view.get("progress") or {}
        running = status == "started" and progress.get("stage") == "searching"
        fraction = 0.0
        parts = []
        generation, planned = progress.get("generation"), progress.get("generations_planned")
        if isinstance(planned, int) and planned > 0:
            parts.append(f"gen {generation or 0}/{planned}")
            fraction = (generation or 0) / planned
        best = progress.get("best_cv_score")
        if isinstance(best, (int, float)):
            parts.append(f"best_cv {best:.4f}")
        elapsed, budget = self.elapsed(progress, running), progress.get("budget_mins")
        if elapsed is not None:
            if isinstance(budget, (int, float)) and budget > 0:
                parts.append(f"{elapsed:.0f}s/{budget * 60:.0f}s")
                if running:
                    fraction = max(fraction, elapsed / (budget * 60))
            else:
                parts.append(f"{elapsed:.0f}s")
        if status == "finished":
            fraction = 1.0
        self.bar.n = round(min(fraction, 1.0 if status == "finished" else 0.99) * 100)
        label = (progress.get("stage") or status) if status == "started" else status
        self.bar.set_description_str(": ".join([label, ", ".join(parts)]) if parts else label, refresh=True)

    def close(self) -> None:
        """End the bar's line."""
        self.bar.close()


