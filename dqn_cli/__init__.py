"""dqn_cli: train and evaluate Deep Q-Network agents from a Hydra config."""

__version__ = "0.1.0"
