"""Referrals: codes per member, who referred whom, and the referral points rule fired by the referred member's
first qualifying order (and reversed when that order is refunded)."""
