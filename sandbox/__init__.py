"""Attack/defense sandbox (M3Att poisoning, MrM membership inference): arrives with its own issues."""
