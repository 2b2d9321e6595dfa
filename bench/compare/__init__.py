"""The side-by-side comparison benchmark (bench/compare/run.py); see README.md here."""
