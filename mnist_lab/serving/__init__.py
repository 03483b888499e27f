"""Using trained models: registering the best run (`register`) and predicting digits from a
user's files (`predict`). It reads runs and models through `tracking`, never retrains, and may
import everything below the workflows (tracking, data, config).
"""
