"""The outputs: the tables of the output contract, publishing, the report."""
