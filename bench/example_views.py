"""The shared examples' view names that the benchmarks fit and score (../shared/README.md), one list
each so that the quality table, the static reference and the step profile use the same views."""

#: the six poses where Zero123++ puts its views: imported as the multi-view prior
ZPP = ["zpp_az030_elp30", "zpp_az090_elm20", "zpp_az150_elp30", "zpp_az210_elm20", "zpp_az270_elp30",
       "zpp_az330_elm20"]
#: the held-out ring the quality table scores
HO = ["ho_az060_elp10", "ho_az180_elp00", "ho_az120_elm10", "ho_az240_elp15", "ho_az300_elp00", "ho_az000_elp45"]
#: the four standard views, scored too for a single-view (``--prior none``) fit
STANDARD = ["az090", "az180", "az270", "az045_el30"]
