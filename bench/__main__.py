"""`python -m bench`: the whole benchmark suite in one table (bench/run.py has the options)."""

from bench import run

run.main()
