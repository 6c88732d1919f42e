"""The model: formula, design, the criteria and solvers, one optimizer driver.

Pure numerics: nothing here reads files, runs SQL or writes outputs.
"""
