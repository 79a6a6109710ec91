"""Reports: performance and thermal trends with regression detection, ROI, the HTML report and
plots. defs.py: performance_trend, roi_report, reports_job and the 06:00 schedule."""
