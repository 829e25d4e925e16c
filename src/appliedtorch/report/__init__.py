"""The one-page report: reads every stage's reports/ files and MLflow runs, writes index.html."""
