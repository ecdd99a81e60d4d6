"""Reports on training runs: comparison tables, figures and DropBlock mask pictures.

``write_report`` is what ``tools/compare.py`` runs; ``draw_dropblock_masks`` is behind
``tools/visualize_dropblock.py``.
"""

from .masks import draw_dropblock_masks, feature_map_size, sample_dropped_cells, stage_sizes
from .plots import plot_ap, plot_keep_prob, plot_losses
from .report import ReportResult, write_report
from .runs import BBOX_METRICS, NotARunFolderError, Run, read_metrics_json, read_run, read_runs
from .table import PAPER_RESULTS, build_rows, format_markdown_table, format_text_table

__all__ = [
    "BBOX_METRICS",
    "NotARunFolderError",
    "PAPER_RESULTS",
    "ReportResult",
    "Run",
    "build_rows",
    "draw_dropblock_masks",
    "feature_map_size",
    "format_markdown_table",
    "format_text_table",
    "plot_ap",
    "plot_keep_prob",
    "plot_losses",
    "read_metrics_json",
    "read_run",
    "read_runs",
    "sample_dropped_cells",
    "stage_sizes",
    "write_report",
]
