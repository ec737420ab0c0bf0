"""The write side's domain: value types, the order aggregate, its rules and errors.

Nothing in here reads the clock, the environment or a database: the current time and
instrument reference data are passed in, so every rule can be tested as a pure function.
"""
