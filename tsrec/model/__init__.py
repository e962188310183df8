"""TS-Rec itself: SA-Init, the TS-Align tasks, runs, SFT, GRPO, scoring a run."""
