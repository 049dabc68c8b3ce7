"""Source datasets: the catalog (data + schema), fetch adapters and LQ/HQ pairing."""
