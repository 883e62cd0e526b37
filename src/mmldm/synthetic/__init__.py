"""The synthetic benchmark: sounding-video families whose audio-visual correspondence is known
exactly (``classes``: the class sets; ``clip``: a drawn clip and what the families share;
``ball`` and ``pulse``: the two families; ``families``: the table of families and the dataset
writer), detectors that recover objects and events from decoded clips (``detect``), the scores
of time and class (``scores``), and the CPU demo that trains and scores on them end to end
(``demo``)."""
