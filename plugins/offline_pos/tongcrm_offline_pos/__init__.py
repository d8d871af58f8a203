"""The offline_pos plugin for tongcrm."""
