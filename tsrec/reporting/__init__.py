"""Reporting (above baselines, below commands): the results tables, plots and README block (``tables``, ``plots``,
``ledger``, ``readme``, ``document``), the regression check against a committed expected file (``expected``),
paired tests on saved row ranks (``paired``) and the move of old results into seed folders (``migrate``)."""
