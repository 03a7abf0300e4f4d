"""slatebandit: self-hosted real-time slate recommendations.

HNSW retrieval finds candidates, a Vowpal Wabbit contextual bandit scores them, a slate builder
fills k slots with exact propensities, and every decision is logged durably to SQL.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
