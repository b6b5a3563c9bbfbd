"""Workers: turn jobs into videos. Models loaded once, jobs of one model decoded together, finished videos
encoded to mp4 and stored; the job records (jobs/) say what happened."""
