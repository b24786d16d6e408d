"""Offline training and evaluation of feature models; never imported by the service."""
