"""Stage 6 of the certification, the report: read a run's accuracy_summary.json and show it (the console
table, report.html, the whole-server table). ``python -m verify.report RUN`` prints the table."""
