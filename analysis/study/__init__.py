"""``ea-ops study``: where EA delivers what the paper claims, and where it does not (docs/study.md).

Three parts: the spikiness/accuracy frontier (:mod:`.frontier`), recall and copying tasks against softmax and
linear attention at matched parameter counts (:mod:`.tasks`, :mod:`.models`, :mod:`.train`), and cost beside
quality (:mod:`.cost`). :func:`run_study` runs a preset (:data:`PRESETS`) and writes JSON, Markdown and PNG.
"""

from .presets import PRESETS, Setting, StudyConfig
from .run import run_study

__all__ = ["PRESETS", "Setting", "StudyConfig", "run_study"]
