"""The traced model: parameter pytrees, market, impact, policies, cascade, waterfall and the step kernel. Imports jax, numpy and model/ only."""
