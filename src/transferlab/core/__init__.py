"""What every part uses: the errors a user can fix, atomic writes, progress lines, downloads and hashes, the lock file."""
