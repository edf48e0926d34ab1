"""Docker support of the harness: engine connection with actionable errors (``engine``),
image names (``names``), the labels that mark every object we create (``labels``), the
offline emulator image (``image``, behind ``harness image build``) and the crash reaper
(``reaper``, also behind ``harness down``'s sweep of dead owners' containers).

Nothing here ever touches a container without our session label: no name patterns."""
