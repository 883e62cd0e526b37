"""The synthetic benchmark: sounding-video families whose audio-visual correspondence is known
exactly (``families``: the ball family and the shared writer; ``pulse``), detectors that
recover objects and events from decoded clips (``detect``), the scores of time and class
(``scores``), and the CPU demo that trains and scores on them end to end (``demo``)."""
