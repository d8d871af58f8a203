"""RFM scores (recency, frequency, monetary, 1-5 by quintiles) and the eight classic RFM cells, per member."""
