"""xLSTM language models: the NeurIPS xLSTM (``xlstm_lm``) and xLSTM-7B (``xlstm_large``)."""
