"""Post-processing of members' releases: pooling, effects, meta-analysis, regression, multiplicity, planning and predicted precision."""
