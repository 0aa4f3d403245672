"""Report generation: FINDINGS and IMPRESSION from the structured results of a job's earlier actions."""

from tools.report_generation.tool import ReportGenerationTool

__all__ = ["ReportGenerationTool"]
