"""Studies beyond one experiment config: CPU kernel sets, torch on a GPU."""
