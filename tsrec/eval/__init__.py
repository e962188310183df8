"""Evaluation: HR@K / NDCG@K records, statistics over seeds and rows, reading the evaluated runs of a method."""
