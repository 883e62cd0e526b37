from mmldm.cli import main

raise SystemExit(main())
