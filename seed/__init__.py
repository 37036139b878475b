"""Generation 0: the stock training program (train.py), its contract and the dataset."""
