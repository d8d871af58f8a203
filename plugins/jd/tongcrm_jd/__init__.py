"""The jd plugin for tongcrm."""
