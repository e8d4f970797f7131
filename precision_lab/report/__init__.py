"""Reports: findings in words, plots, and the Markdown/HTML documents of a results folder."""
