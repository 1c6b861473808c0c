"""The fairness evaluation: the simulator runs of every policy, the calibration, the real-stack replay."""
