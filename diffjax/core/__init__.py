"""Pure math: schedules, parameterizations, loss weightings and time distributions. Typed
arguments only; nothing here reads a config."""
