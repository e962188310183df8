"""Data: the mirror's splits, download and raw conversion, semantic-ID indexes, and where every artifact lives."""
